"""The mock sky: a test substrate kept apart from the product (which never imports it), with its fixtures and the local mirror."""
