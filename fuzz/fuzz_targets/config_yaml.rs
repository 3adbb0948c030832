//! Configuration text (`weir gateway -f`, `weir sink -f`): a typed spec or an error that
//! names the problem, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_crds::{PipelineSpec, SinkSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = weir::config::from_yaml_str::<PipelineSpec>(text) {
        let _ = weir::config::validate(&spec);
    }
    if let Ok(spec) = weir::config::from_yaml_str::<SinkSpec>(text) {
        let _ = weir::sink::config::validate(&spec);
    }
});
