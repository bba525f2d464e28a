# astguard: a static binary in a small image with the iptables tools.
# Run it next to Asterisk with the host's network and NET_ADMIN, with
# /etc/astguard (config.toml and ami-secret, mode 0600, root) set up as in
# the README's Install section:
#   docker run -d --name astguard --network host --cap-add NET_ADMIN --cap-add NET_RAW \
#     -v /etc/astguard:/etc/astguard:ro -v /var/lib/astguard:/var/lib/astguard \
#     -v /run/astguard:/run/astguard astguard
# On a mount whose mode cannot be changed (files every user can read), add
# the command: run --config /etc/astguard/config.toml --allow-shared-files

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/guard ./cmd/guard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/guard /usr/local/bin/guard
COPY config.toml.example /etc/astguard/config.toml.example
VOLUME ["/var/lib/astguard", "/run/astguard"]
ENTRYPOINT ["/usr/local/bin/guard"]
CMD ["run", "--config", "/etc/astguard/config.toml"]
