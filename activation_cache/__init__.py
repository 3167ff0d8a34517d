"""Capture transformer activations at named hook points and store them as resumable shards."""
