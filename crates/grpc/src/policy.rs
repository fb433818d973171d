//! Each method's `palisade.options.v1.policy`, read once from the descriptor set.

use std::collections::HashMap;

pub use palisade_proto::palisade::options::v1::AuditLevel;
use palisade_proto::palisade::options::v1::MethodPolicy as PolicyOption;
use prost_reflect::{DescriptorPool, Value};

use crate::{Error, Result};

const POLICY_EXTENSION: &str = "palisade.options.v1.policy";

/// The access policy of one RPC, keyed elsewhere by its HTTP/2 path `/pkg.Service/Method`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodPolicy {
    /// `/palisade.identity.v1.TenantService/CreateTenant`
    pub path: String,
    pub permission: Option<String>,
    pub public: bool,
    pub internal: bool,
    pub callers: Vec<String>,
    /// Only principals of the `system` tenant may call it (`platform_only`).
    pub platform_only: bool,
    pub audit: AuditLevel,
    /// Whether requests or responses stream (so the call may rightly last as long as the
    /// client keeps it open).
    pub streaming: bool,
}

impl MethodPolicy {
    /// The action name recorded in audit events: the permission, or the method path.
    pub fn action(&self) -> &str {
        self.permission.as_deref().unwrap_or(&self.path)
    }
}

/// Every `palisade.*` method's policy.
#[derive(Clone, Debug, Default)]
pub struct MethodPolicies {
    by_path: HashMap<String, MethodPolicy>,
}

impl MethodPolicies {
    /// Reads the policy of every method of every `palisade.*` service in `pool`. A method with
    /// neither `permission` nor `public`, or with both, is an error: the mesh must not start
    /// with an RPC whose access nobody decided.
    pub fn from_pool(pool: &DescriptorPool) -> Result<MethodPolicies> {
        let extension = pool
            .get_extension_by_name(POLICY_EXTENSION)
            .ok_or_else(|| {
                Error::Descriptors(format!("extension {POLICY_EXTENSION} is missing"))
            })?;
        let mut by_path = HashMap::new();
        let services = pool
            .services()
            .filter(|s| s.full_name().starts_with("palisade."));
        for method in services.flat_map(|service| service.methods().collect::<Vec<_>>()) {
            let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
            let options = method.options();
            let option = match options.get_extension(&extension).as_ref() {
                Value::Message(message) if options.has_extension(&extension) => message
                    .transcode_to::<PolicyOption>()
                    .map_err(|e| Error::Descriptors(format!("{path}: {e}")))?,
                _ => {
                    return Err(Error::Descriptors(format!(
                        "{path} declares no policy option"
                    )));
                }
            };
            let permission = (!option.permission.is_empty()).then(|| option.permission.clone());
            if permission.is_some() == option.public {
                return Err(Error::Descriptors(format!(
                    "{path} must declare exactly one of `permission` or `public`"
                )));
            }
            // An internal method must still be checked (it carries a permission), and callers
            // only mean something for internal methods: refuse combinations that would open a
            // method wider than its author meant.
            if option.public && option.internal {
                return Err(Error::Descriptors(format!(
                    "{path} cannot be both `public` and `internal`"
                )));
            }
            if option.platform_only && (option.public || option.internal) {
                return Err(Error::Descriptors(format!(
                    "{path} is `platform_only`, so it needs a principal: not `public` or `internal`"
                )));
            }
            if !option.callers.is_empty() && !option.internal {
                return Err(Error::Descriptors(format!(
                    "{path} lists `callers` but is not `internal`"
                )));
            }
            let audit = option.audit();
            let policy = MethodPolicy {
                path: path.clone(),
                permission,
                public: option.public,
                internal: option.internal,
                callers: option.callers,
                platform_only: option.platform_only,
                audit,
                streaming: method.is_client_streaming() || method.is_server_streaming(),
            };
            by_path.insert(path, policy);
        }
        Ok(MethodPolicies { by_path })
    }

    /// The policies of the whole Palisade API.
    pub fn palisade() -> Result<MethodPolicies> {
        MethodPolicies::from_pool(palisade_proto::descriptor_pool())
    }

    pub fn get(&self, path: &str) -> Option<&MethodPolicy> {
        self.by_path.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = &MethodPolicy> {
        self.by_path.values()
    }

    /// The services with a method the gateway routes (one not `internal`), sorted: what the
    /// public port offers. A service of internal methods only is for mesh components.
    pub fn public_services(&self) -> Vec<String> {
        let mut services: Vec<String> = (self.by_path.values())
            .filter(|policy| !policy.internal)
            .filter_map(|policy| {
                let (service, _method) = policy.path.strip_prefix('/')?.split_once('/')?;
                Some(service.to_owned())
            })
            .collect();
        services.sort();
        services.dedup();
        services
    }

    /// Every permission some RPC requires: the catalogue identity grants from.
    pub fn permissions(&self) -> Vec<String> {
        let mut all: Vec<_> = self
            .by_path
            .values()
            .filter_map(|p| p.permission.clone())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_in_the_mesh_declares_permission_or_public() {
        // `from_pool` refuses a method without a decided policy, so loading proves it for all.
        let policies = MethodPolicies::palisade().expect("every RPC declares a policy");
        let methods: usize = palisade_proto::palisade_services()
            .map(|s| s.methods().len())
            .sum();
        assert_eq!(policies.iter().count(), methods);
        assert!(methods > 0);
        for policy in policies.iter() {
            assert!(
                policy.public ^ policy.permission.is_some(),
                "{}",
                policy.path
            );
        }
    }

    #[test]
    fn public_services_leave_out_those_of_internal_methods_only() {
        let services = MethodPolicies::palisade().unwrap().public_services();
        // Some methods internal, some not: still offered.
        assert!(services.contains(&"palisade.identity.v1.ApiKeyService".to_owned()));
        assert!(services.contains(&"palisade.compliance.v1.AuditService".to_owned()));
        // Internal methods only.
        assert!(!services.contains(&"palisade.identity.v1.AuthorizationService".to_owned()));
        assert!(!services.contains(&"palisade.identity.v1.TenantDataService".to_owned()));
    }

    #[test]
    fn reads_the_options_as_written() {
        let policies = MethodPolicies::palisade().unwrap();
        let create = policies
            .get("/palisade.identity.v1.TenantService/CreateTenant")
            .unwrap();
        assert_eq!(
            create.permission.as_deref(),
            Some("identity.tenants.create")
        );
        assert_eq!(create.audit, AuditLevel::Metadata);
        let verify = policies
            .get("/palisade.identity.v1.ApiKeyService/VerifyApiKey")
            .unwrap();
        assert!(verify.internal);
        assert_eq!(verify.callers, vec!["gateway".to_owned()]);
        assert!(
            policies
                .get("/palisade.observability.v1.StatusService/GetStatus")
                .unwrap()
                .public
        );
        assert!(
            policies
                .permissions()
                .contains(&"compliance.audit.list".to_owned())
        );
    }
}
