"""appliance: a headless push-button voice assistant on Azure AI Voice Live."""

__version__ = "0.1.0"
