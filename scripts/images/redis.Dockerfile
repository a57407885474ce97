# Metadata and entrypoint for the local Redis image (scripts/build-images.sh). Its default command
# is redis-server, so testcontainers' RedisContainer (which passes none) starts the server.
ARG ROOTFS
FROM ${ROOTFS}
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
