//! Configuration text (`weir gateway -f`, `weir sink -f`): a typed spec or an error that
//! names the problem, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_crds::config::from_yaml_str;
use weir_crds::settings::{GatewaySettings, SinkSettings};
use weir_crds::{PipelineSpec, SinkSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = from_yaml_str::<PipelineSpec>(text) {
        let _ = GatewaySettings::try_from(spec);
    }
    if let Ok(spec) = from_yaml_str::<SinkSpec>(text) {
        let _ = SinkSettings::try_from(spec);
    }
});
