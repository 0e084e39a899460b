"""cdr: training-free preference annotation with Customizable Density Ratios.

reward(x, y) = log p_strong(y | x) - log p_weak(y | x)
"""

from cdr._version import __version__
from cdr.backends.base import BackendOptions
from cdr.config import RewardConfig
from cdr.conversation import Conversation, ConversationError, Message
from cdr.reward import DensityRatio, RewardResult

__all__ = [
    "DensityRatio",
    "RewardResult",
    "RewardConfig",
    "BackendOptions",
    "Conversation",
    "ConversationError",
    "Message",
    "__version__",
]
