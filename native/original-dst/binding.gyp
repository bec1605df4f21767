# Builds original-dst.c into build/Release/original_dst.node, the addon that reads SO_ORIGINAL_DST
# for the transparent proxy (delivery/proxy-origdst.ts loads it). Built by scripts/build-addon.mjs
# at install; plain N-API from Node's own headers, so it needs no npm package.
{
  "targets": [
    {
      "target_name": "original_dst",
      "sources": ["original-dst.c"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}
