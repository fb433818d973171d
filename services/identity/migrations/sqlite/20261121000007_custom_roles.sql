-- A tenant's custom roles and the permissions each grants. Built-in roles are not stored
-- (identity computes them from the permission catalogue); a custom role's id is never a
-- built-in role's name, so `user_roles.role` names either kind unambiguously. A custom role
-- is deleted only when no `user_roles` row names it (checked under a lock on the role row).
CREATE TABLE roles (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description  TEXT NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE role_permissions (
    tenant_id  TEXT NOT NULL,
    role_id    TEXT NOT NULL,
    permission TEXT NOT NULL,
    PRIMARY KEY (tenant_id, role_id, permission),
    FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id)
);

-- `ListRoles` with `permission = "…"`: the roles granting one permission.
CREATE INDEX role_permissions_by_permission ON role_permissions (tenant_id, permission);


-- A password change ends every session of the user: its token families, found by user.
CREATE INDEX token_families_by_user ON token_families (tenant_id, user_id);
