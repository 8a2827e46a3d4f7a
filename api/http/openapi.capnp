# The HTTP API's OpenAPI document (openapi.json beside this file), embedded
# in the build so a node serves it at /v1/openapi.json. Not a wire format.
@0xa1b45a840d120a0c;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("chorus::api::http::generated");

const openapiJson :Text = embed "openapi.json";
