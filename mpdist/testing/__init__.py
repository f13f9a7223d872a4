"""Testing tools for distributed code: test cases, fakes, decorators and the pytest plugin."""
