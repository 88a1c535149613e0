"""Device and cluster profiles (YAML) and the YAML reader whose errors name file and line."""
