"""Real-browser tests (JupyterLab 4 / Notebook 7 in headless Chromium); see conftest.py."""
