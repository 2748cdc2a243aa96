"""Training code for bgremove_plugin's weights. Imports the package; the package never imports this."""
