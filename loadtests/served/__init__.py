"""What the served-quality and served-new-books measurements share: the data they split and read, and the
HTTP client they measure a running service with."""
