# Builds reuseport.c into build/Release/reuseport.node: listening sockets sharing a port, and the
# program that picks which takes a connection (mta/ingress/ingress-known-queue.ts loads it). Built
# by scripts/build-addon.mjs at install; plain N-API from Node's own headers.
{
  "targets": [
    {
      "target_name": "reuseport",
      "sources": ["reuseport.c"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}
