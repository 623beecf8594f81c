"""The stages put together: register, refit, presets and the options that drive them."""
