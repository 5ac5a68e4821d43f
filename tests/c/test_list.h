/* test_list.h - every C test and every child role, in one list. */
#define PFD_TESTS(X)              \
  X(errors_names)                 \
  X(spawn_exit_code)              \
  X(spawn_missing_program)        \
  X(spawn_not_executable)         \
  X(spawn_missing_cwd)            \
  X(spawn_exec_failure_step)      \
  X(spawn_failure_repeated)       \
  X(spawn_stdio_pipes)            \
  X(spawn_stdio_swapped_sources)  \
  X(spawn_fd_hygiene)             \
  X(spawn_signals_reset)          \
  X(spawn_setsid)                 \
  X(spawn_env_path)               \
  X(spawn_uid_gid)                \
  X(spawn_pdeathsig)              \
  X(spawn_bad_options)            \
  X(process_wait_timeout_kill)    \
  X(process_reap_twice)           \
  X(process_watch_hangup)         \
  X(collect_both_streams)         \
  X(collect_max_buffer)           \
  X(collect_timeout)              \
  X(frame_round_trip_any_split)   \
  X(frame_rejects_bad_headers)    \
  X(frame_pack_writes_frames_that_scan_back) \
  X(fdpass_round_trip)            \
  X(fdpass_truncated_closes_all)  \
  X(fdpass_peer_gone_no_sigpipe)  \
  X(fdpass_frame_send_is_one_frame) \
  X(fdpass_pair_is_a_connected_channel) \
  X(rx_hands_out_frames_under_any_split) \
  X(rx_refuses_what_no_frame_claims) \
  X(rx_refuses_descriptors_in_the_middle_of_a_frame) \
  X(rx_grows_for_a_large_frame_and_gives_the_room_back) \
  X(rx_batch_tells_plain_frames_and_stops_at_descriptors) \
  X(ring_layout_checks)             \
  X(ring_wraps_at_every_small_size) \
  X(ring_full_and_empty_edges)      \
  X(ring_read_copies_releases_and_leaves_what_does_not_fit) \
  X(ring_write_many_publishes_what_fits_in_order) \
  X(ring_read_many_copies_a_batch_and_stops_after_an_empty_record) \
  X(ring_refuses_corrupted_memory)  \
  X(ring_two_threads_stress)        \
  X(ring_two_threads_sleeping)      \
  X(ring_two_processes_stress)      \
  X(ring_wait_times_out_wakes_and_sees_the_peer_go) \
  X(ring_stall_is_told_apart_from_a_busy_consumer) \
  X(shm_create_map_and_seals)       \
  X(dispatch_survives_a_worker_dying_with_connections) \
  X(dispatch_takes_acknowledgements_in_one_batch) \
  X(dispatch_bounds_a_workers_connections_in_flight) \
  X(dispatch_least_connections_prefers_the_least_loaded) \
  X(dispatch_remove_honours_acks_already_sent) \
  X(shm_ring_between_processes)

#define PFD_CHILDREN(X) \
  X(exit)               \
  X(write)              \
  X(list_fds)           \
  X(signal_state)       \
  X(session)            \
  X(ids)                \
  X(sleep)              \
  X(spew)               \
  X(swapped)            \
  X(spawn_orphan)
