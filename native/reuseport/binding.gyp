# Builds reuseport.c and refuser.c into build/Release/reuseport.node: listening sockets sharing a
# port, the program that picks which takes a connection, and a thread that answers one of them
# (mta/ingress/ingress-known-queue.ts loads it). Built by scripts/build-addon.mjs at install; plain
# N-API from Node's own headers.
{
  "targets": [
    {
      "target_name": "reuseport",
      "sources": ["reuseport.c", "refuser.c"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}
