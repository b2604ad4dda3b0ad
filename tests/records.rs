//! Spec §15 checklist, records, state machine and LIST (items 67-89, 114), on a master.

mod common;

transcripts!("records":
    c067_to_c071_reserve_activate_find,
    c072_to_c075_deactivate,
    c076_c077_delete,
    c078_replicated_master,
    c078_mupdate_config_without_mupdate_server_is_standard,
    c079_to_c083_acl_and_location_normalisation,
    d011_deleted_names_are_stored_verbatim,
    c084_c085_c086_list_order_prefix_and_everything,
    c087_c088_list_argument_errors,
    c089_list_prefix_is_a_plain_byte_prefix,
    c114_committed_changes_survive_a_restart,
    transcripts_22_crash_inputs_leave_everyone_else_working,
);
