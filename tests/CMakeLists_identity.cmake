# Identity store, account server, create_account and the command-line
# tools (layer 6). Included from tests/CMakeLists.txt after mdg_test().
mdg_test(test_identity)
mdg_test(test_account)
# test_account also drives messidge-admin and messidge end to end when
# they are built (tools/ is added before tests/).
if(TARGET messidge-admin AND TARGET messidge_cli)
  add_dependencies(test_account messidge-admin messidge_cli)
  target_compile_definitions(test_account PRIVATE
    MDG_ADMIN_BIN="$<TARGET_FILE:messidge-admin>"
    MDG_CLI_BIN="$<TARGET_FILE:messidge_cli>")
endif()

# The example systemd unit (dist/) passes systemd-analyze verify (skipped
# when it is not installed).
if(TARGET messidge-broker)
  add_test(NAME test_systemd_unit
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_systemd_unit.sh
                   ${CMAKE_SOURCE_DIR}/dist/messidge-broker.service.in $<TARGET_FILE:messidge-broker>)
  set_tests_properties(test_systemd_unit PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60)
endif()

# The mixed Messidge 1.x demo from the shipped programs (demo/ and tools/)
# with the Python 1.x peers: notes_broker --legacy-port, and notes_client,
# divide_node and messidge call --legacy against a 1.x broker.
if(TARGET messidge-admin AND TARGET messidge_cli)
  add_test(NAME test_mixed_demo
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_mixed_demo.sh ${CMAKE_BINARY_DIR} /usr/bin/python3
                   ${CMAKE_CURRENT_SOURCE_DIR}/legacy/peer.py)
  set_tests_properties(test_mixed_demo PROPERTIES TIMEOUT 180)
endif()

# The same identity tests on PostgreSQL, in a server the test starts
# (pgserver.c: initdb and postgres as nobody when run as root).
add_executable(test_identity_pg test_identity.c pgserver.c)
target_compile_definitions(test_identity_pg PRIVATE MDG_TEST_PG)
target_link_libraries(test_identity_pg PRIVATE messidge_static)
target_include_directories(test_identity_pg PRIVATE ${CMAKE_SOURCE_DIR}/src)
add_test(NAME test_identity_pg COMMAND test_identity_pg)
set_tests_properties(test_identity_pg PROPERTIES TIMEOUT 180)
# A PostgreSQL store behind running brokers: revocations by LISTEN/NOTIFY
# (and after the listening connection is ended), the account server, and
# the tools end to end with --store URI.
add_executable(test_identity_pg_broker test_identity_pg_broker.c pgserver.c)
target_link_libraries(test_identity_pg_broker PRIVATE messidge_static)
target_include_directories(test_identity_pg_broker PRIVATE ${CMAKE_SOURCE_DIR}/src)
add_test(NAME test_identity_pg_broker COMMAND test_identity_pg_broker)
set_tests_properties(test_identity_pg_broker PROPERTIES TIMEOUT 180)
if(TARGET messidge-broker AND TARGET messidge-admin AND TARGET messidge_cli)
  add_dependencies(test_identity_pg_broker messidge-broker messidge-admin messidge_cli)
  target_compile_definitions(test_identity_pg_broker PRIVATE
    MDG_BROKER_BIN="$<TARGET_FILE:messidge-broker>"
    MDG_ADMIN_BIN="$<TARGET_FILE:messidge-admin>"
    MDG_CLI_BIN="$<TARGET_FILE:messidge_cli>")
endif()

# messidge-broker --fleet end to end: two broker processes sharing a
# PostgreSQL store, one nats-server; node names resolve fleet-wide.
if(TARGET messidge-broker AND TARGET messidge_cli)
  add_executable(test_fleet_tools test_fleet_tools.c pgserver.c natsserver.c)
  target_link_libraries(test_fleet_tools PRIVATE messidge_static)
  target_include_directories(test_fleet_tools PRIVATE ${CMAKE_SOURCE_DIR}/src)
  add_dependencies(test_fleet_tools messidge-broker messidge_cli)
  target_compile_definitions(test_fleet_tools PRIVATE
    MDG_BROKER_BIN="$<TARGET_FILE:messidge-broker>"
    MDG_CLI_BIN="$<TARGET_FILE:messidge_cli>")
  add_test(NAME test_fleet_tools COMMAND test_fleet_tools)
  set_tests_properties(test_fleet_tools PROPERTIES TIMEOUT 180)
endif()

# A fleet on a NATS cluster of three with one PostgreSQL store: a server
# killed mid-stream loses and doubles nothing; a revocation through the
# store ends the user's sessions on every broker.
add_executable(test_fleet_cluster test_fleet_cluster.c pgserver.c natsserver.c)
target_link_libraries(test_fleet_cluster PRIVATE messidge_static)
target_include_directories(test_fleet_cluster PRIVATE ${CMAKE_SOURCE_DIR}/src)
add_test(NAME test_fleet_cluster COMMAND test_fleet_cluster)
set_tests_properties(test_fleet_cluster PROPERTIES TIMEOUT 180)

# `make fleet-demo` itself, on the programs of this build: the guide's demo
# at broker 2 calling the divide node at broker 1, over a NATS cluster of
# three and PostgreSQL; it exits 0 only when every step did.
if(TARGET messidge-admin AND TARGET messidge_cli)
  add_test(NAME test_fleet_demo
           COMMAND bash ${CMAKE_SOURCE_DIR}/demo/run-fleet-demo.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(test_fleet_demo PROPERTIES TIMEOUT 180)
endif()
