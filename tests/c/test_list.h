/* test_list.h - every C test and every child role, in one list for every platform: the
 * _ALL lists run everywhere (tests/c/test_dispatch.c), the _UNIX lists on Linux and macOS
 * (tests/c/test_*.c), the _WIN lists on Windows (tests/c/win/tests.c); PFD_TESTS and
 * PFD_CHILDREN are this platform's. */
#define PFD_TESTS_ALL(X)                                  \
  X(dispatch_survives_a_worker_dying_with_connections)    \
  X(dispatch_bounds_a_workers_connections_in_flight)      \
  X(dispatch_least_connections_prefers_the_least_loaded)  \
  X(dispatch_remove_honours_acks_already_sent)            \
  X(dispatch_takes_acknowledgements_in_one_batch)         \
  X(dispatch_to_worker_processes)

#define PFD_CHILDREN_ALL(X) X(dispatch_worker)

#define PFD_TESTS_UNIX(X)            \
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
  X(rx_parses_handle_descriptions_and_refuses_bad_ones) \
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
  X(shm_ring_between_processes)

#define PFD_CHILDREN_UNIX(X) \
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

#define PFD_TESTS_WIN(X)                                   \
  X(errors_translated)                                     \
  X(quoting_table)                                         \
  X(arguments_round_trip)                                  \
  X(random_arguments_round_trip)                           \
  X(exit_codes_and_kill)                                   \
  X(stdio_pipes)                                           \
  X(collect_both_streams_and_limits)                       \
  X(failures_name_their_step)                              \
  X(only_listed_handles_are_inherited)                     \
  X(a_closed_slot_is_given_as_closed)                      \
  X(fd_close_closes_handles_and_sockets)                   \
  X(shared_memory_between_processes)                       \
  X(children_die_with_their_parent)                        \
  X(handle_passing_between_processes)                      \
  X(socket_passing_between_processes)                      \
  X(pipe_frames_between_processes)                         \
  X(pair_carries_many_handles_per_message)                 \
  X(a_stream_pipe_above_slot_2)                            \
  X(wake_crosses_processes)                                \
  X(ring_between_processes)                                \
  X(ring_wait_sees_its_peer_gone)

#define PFD_CHILDREN_WIN(X) \
  X(exit)                   \
  X(sleep)                  \
  X(echo_args)              \
  X(stdio)                  \
  X(handles)                \
  X(shm)                    \
  X(grandparent)            \
  X(ring_consumer)          \
  X(sleeper)                \
  X(handle_receiver)        \
  X(socket_receiver)        \
  X(frames_echo)            \
  X(echo3)                  \
  X(cat)

#ifdef _WIN32
#define PFD_TESTS(X) PFD_TESTS_WIN(X) PFD_TESTS_ALL(X)
#define PFD_CHILDREN(X) PFD_CHILDREN_WIN(X) PFD_CHILDREN_ALL(X)
#else
#define PFD_TESTS(X) PFD_TESTS_UNIX(X) PFD_TESTS_ALL(X)
#define PFD_CHILDREN(X) PFD_CHILDREN_UNIX(X) PFD_CHILDREN_ALL(X)
#endif
