# Metadata and entrypoint for the local Citus image (scripts/build-images.sh with CITUS_SRC):
# ROOTFS is a Debian root with postgresql-15 and Citus built from its source into it. Like the
# official citusdata/citus image: the extension is preloaded and created in $POSTGRES_DB on the
# first start. This step runs nothing, so it needs no network.
ARG ROOTFS
FROM ${ROOTFS}
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY citus-init.sql /docker-entrypoint-initdb.d/001-citus.sql
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres", "-c", "shared_preload_libraries=citus"]
