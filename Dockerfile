# syntax=docker/dockerfile:1
# The sendense-nutanix image: operator (`sendense-nutanix operator`) and mover (`sendense-nutanix mover …`) in one.
# TypeScript runs directly on Node 24 (native type stripping): there is no build step, only production dependencies.
# The Prism simulator (sim/), tests and docs are not in the image (.dockerignore admits bin/, src/ and package*.json).
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS dependencies
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
# qemu-nbd and qemu-img serve and write the disk images; qemu-block-extra brings the iSCSI driver that reads the
# Nutanix volume groups; util-linux (in the base image) provides setpriv for qemu-nbd's parent-death signal.
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils qemu-block-extra ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=dependencies /app/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY bin/ ./bin/
COPY src/ ./src/
RUN ln -s /app/bin/sendense-nutanix /usr/local/bin/sendense-nutanix
ENV NODE_ENV=production
# 65532: the conventional "nonroot" uid/gid; the chart's Pods run as it with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["/app/bin/sendense-nutanix"]
CMD ["--help"]
