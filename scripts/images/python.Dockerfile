# Metadata for the local Python base image (scripts/build-images.sh): Debian's python3 (3.11),
# venv and pip, standing in for python:3.11-slim as the Dockerfile's PYTHON_IMAGE.
ARG ROOTFS
FROM ${ROOTFS}
ENV LANG=C.UTF-8
CMD ["python3"]
# uv reads its trusted certificates from here rather than from its built-in list.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
