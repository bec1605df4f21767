# Builds sd-notify.c into build/Release/sd_notify.node, the addon that sends systemd's readiness
# notifications (mta/mta-notify.ts loads it). Built by scripts/build-addon.mjs at install; plain
# N-API from Node's own headers, so it needs no npm package.
{
  "targets": [
    {
      "target_name": "sd_notify",
      "sources": ["sd-notify.c"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}
