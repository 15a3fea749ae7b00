"""Thin entry points for functions-framework: decode the event, call one service function, answer."""
