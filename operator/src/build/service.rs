//! Service: the named ports of a workload, of the type and with the annotations the
//! resource asks for (`ClusterIP` by default).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_crds::resources::ServiceSettings;

use super::Owner;

/// A Service named `name` over the pods `selector` matches, each port targeting the
/// container port of the same name.
pub(super) fn service(
    owner: &Owner,
    name: &str,
    component: &str,
    settings: &ServiceSettings,
    selector: BTreeMap<String, String>,
    ports: &[(&str, i32)],
) -> Service {
    let mut metadata = owner.meta(name, component);
    if !settings.annotations.is_empty() {
        metadata.annotations = Some(settings.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(settings.type_.clone().unwrap_or_else(|| "ClusterIP".into())),
            selector: Some(selector),
            ports: Some(ports.iter().map(|(n, p)| service_port(n, *p)).collect()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}
