# Request bodies of the overview routes (api/http/overview.h), decoded from
# JSON by api/http/json.h like the other routes' params. Not a wire format.
@0xb4e94064b09b394d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("chorus::api::http::generated");

# POST /v1/cluster/overview/partition: two groups of node ids (or region
# names); each node of one drops gossip with each node of the other.
struct OverviewPartitionParams {
  a @0 :List(Text);
  b @1 :List(Text);
}

# POST /v1/cluster/overview/heal: no parameters ({} or no body).
struct OverviewHealParams {}
