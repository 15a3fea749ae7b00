"""Tests of the Google Cloud adapters against real local servers."""
