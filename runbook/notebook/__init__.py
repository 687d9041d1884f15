"""Layer 6, the notebook surface: the ``Run`` facade the notebooks call, rendering (HTML,
text, charts), the JupyterLab panel, progress, and the notebooks' generated cells."""
