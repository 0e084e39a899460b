"""The HTTP reward service (``cdr serve``, extra ``[serve]``) and its Python client."""
