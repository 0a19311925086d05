# syntax=docker/dockerfile:1
# Build: docker build -t smtpbridge .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/smtpbridge ./cmd/smtpbridge \
 && mkdir -p /out/var/lib/smtpbridge

# distroless/static: CA certificates, tzdata, a nonroot user (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/smtpbridge /usr/local/bin/smtpbridge
COPY --from=build --chown=65532:65532 /out/var/lib/smtpbridge /var/lib/smtpbridge
USER 65532:65532
VOLUME ["/var/lib/smtpbridge"]
EXPOSE 587 2525 9464
ENTRYPOINT ["/usr/local/bin/smtpbridge"]
CMD ["serve", "--config", "/etc/smtpbridge/smtpbridge.yaml"]
