"""The load-test app and the Locust files that drive it (see README.md here)."""
