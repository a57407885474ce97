-- The first start of a node of the local Citus image: the extension in $POSTGRES_DB (the
-- server runs with shared_preload_libraries = 'citus', the image's command).
CREATE EXTENSION citus;
