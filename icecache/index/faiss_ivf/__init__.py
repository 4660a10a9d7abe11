"""FAISS IVF page index (``faiss-ivf``, ``faiss-ivfpq``): inverted lists are the pages."""
