"""cdr: training-free preference annotation with Customizable Density Ratios.

reward(x, y) = log p_strong(y | x) - log p_weak(y | x)
"""

__version__ = "0.1.0"

from cdr.config import RewardConfig  # noqa: E402
from cdr.conversation import Conversation, ConversationError, Message  # noqa: E402
from cdr.reward import DensityRatio, RewardResult  # noqa: E402

__all__ = ["DensityRatio", "RewardResult", "RewardConfig", "Conversation", "ConversationError", "Message", "__version__"]
