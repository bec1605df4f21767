/* The refuser's N-API functions, registered on the addon's exports (refuser.c). */
#ifndef ICHIDAN_REFUSER_H
#define ICHIDAN_REFUSER_H
#include <node_api.h>
void refuser_register(napi_env env, napi_value exports);
#endif
