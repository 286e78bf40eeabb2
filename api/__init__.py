"""The REST API: authenticated transactional writes, reads from MongoDB, public search."""
