/* tests.h - the list of unit tests. */
#ifndef SL_TESTS_H
#define SL_TESTS_H
#include "test.h"

#define SL_TESTS(X) \
    X(time_parse_table) X(time_format_roundtrip) X(units) X(hash_and_uuid) X(arena_and_buf) X(url_redact_table) \
    X(config_design_example) X(config_errors_table) X(config_header_timeout_and_body_rate) X(config_demo_and_exposure) X(config_admin_token_checks) \
    X(config_file_mode_warning) X(junk_identifiers) X(lmdb_grow) \
    X(handoff_order_and_take_all) X(handoff_cond_wait_and_close) X(handoff_wakes_once_per_burst) X(handoff_many_producers) \
    X(handoff_close_while_pushing) X(handoff_batched_per_iteration) \
    X(skew_correction) X(normalize_table) X(normalize_fields) X(prescan) X(json_duplicate_members) X(ack_scan_table) X(ack_hostile_bodies_cost_linear) X(json_print_as_cjson) X(base64_and_percent) \
    X(gunzip_bounded) X(ip_anonymize_and_parse) X(client_ip_from_xff) X(ratelimit_ipv6_by_64) X(geoip_country_schema) \
    X(geoip_city_schema) X(dedupe_window) X(dedupe_rollback) X(dedupe_growth_and_expiry) X(dedupe_bounded) \
    X(store_commit_dedupe_restart_grow) X(store_queue_bound) X(store_ports_on_other_loops) X(store_compressed_roundtrip) X(store_failure_isolated_to_its_batch) X(stitch_identify_absorbs_anonymous_trail) \
    X(stitch_second_device_merges) X(stitch_shared_device_refused_once) X(stitch_alias_and_email) \
    X(stitch_junk_and_traits) X(stitch_refusals_coalesce) X(stitch_refusals_bounded_and_paged) X(stitch_refusal_bound_reads_refusals_only) X(stitch_refusal_refs_migrated_at_open) X(stitch_active_from_records_before) X(stitch_junk_ids_with_email_are_erasable) X(stitch_erasure_in_slices) X(stage_context_by_phase) X(stage_timers_durable) X(trigger_layout1_converted_at_open) X(stitch_erasure_and_restart) X(stitch_consent_merges_and_erases) X(stitch_retention_prunes_and_restarts) X(stitch_verify_finds_damage) X(stitch_attachments_follow_merges_and_erasure) X(stage_sets_aside_and_goes_on) X(stage_replays_set_aside) X(stage_step_not_found_is_not_the_end) X(fields_records_moved_into_person_records) X(fields_merge_chain_through_a_person_without_state) X(stitch_records_with_an_order_count_from_before_the_ledger) X(stitch_consent_survives_a_redone_transaction) X(trigger_counted_once_when_a_transaction_is_redone) X(trigger_states_from_before_the_header) X(stage_job_follows_acknowledged_events) X(stage_yields_past_its_lag_bound) X(stage_commits_spaced_unless_awaited) X(trigger_glob_table) X(webhook_backoff) \
    X(webhook_signature_vector) X(entity_text_table) X(jread_table) X(feed_header_codec) X(feed_old_layout_read) \
    X(feed_index_filters_erasure) X(feed_old_store_indexed_at_open) X(feed_pruned_position) \
    X(rules_eval_table) X(rules_eval_on_text) X(rules_profile_callback) X(rules_compile_errors_table) X(rules_bounds) X(rules_print_roundtrip) \
    X(rules_eval_allocates_nothing) X(rules_glob_table) \
    X(trigger_cart_record_roundtrip) X(trigger_cart_record_bounds) X(trigger_cart_old_layout_loads) \
    X(trigger_cart_record_corrupt) X(trigger_page_record) X(trigger_inactivity_record) \
    X(fields_sum_property) X(fields_rfm_scores_and_segments) X(fields_config_errors) X(fields_local_days_across_dst) \
    X(fields_generic_windows_and_merges) X(fields_records_corrupted) X(fields_flatten_prospect_after_segment) \
    X(fields_gstate_records_corrupted) X(fields_gstate_codec_compact) X(fields_gstate_buckets_bounded)

#define SL_DECLARE(n) TEST(n);
SL_TESTS(SL_DECLARE)
#define SL_ENTRY(n) {#n, test_##n},
static const test_case_t all_tests[] = {SL_TESTS(SL_ENTRY)};
#endif
