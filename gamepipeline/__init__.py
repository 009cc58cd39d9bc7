"""GamePipeline: pipeline templates turned into running game containers on GameNodes."""

__version__ = "0.1.0"
