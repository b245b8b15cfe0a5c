"""The request path, compiled with Cython. Nothing here awaits; see each module's opening essay."""
