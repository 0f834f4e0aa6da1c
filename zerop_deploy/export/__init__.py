"""Export stage: QDQ pairs and integer weights into the original graph, and deployment targets."""
