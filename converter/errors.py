"""Exceptions the converter raises; the CLI turns each into a one-line error and a non-zero exit."""


class ConversionError(Exception):
    """Base class: anything that stops a conversion for a reason the user can act on."""


class CheckpointError(ConversionError):
    """The input checkpoint is missing, truncated, corrupt or inconsistent."""


class UnsupportedArchitectureError(ConversionError):
    """config.json names an architecture the converter has no module for."""


class RecipeError(ConversionError):
    """A requested tensor type is unknown or not allowed for that role."""


class ConfigError(ConversionError):
    """config.json has a value of the wrong type, out of range, or inconsistent with another value."""
