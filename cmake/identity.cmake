# Layer 6: identity store (SQLite or PostgreSQL), account server (libmicrohttpd) and
# client-side account creation (libcurl). Included from the top
# CMakeLists.txt after the library targets are defined.
pkg_check_modules(SQLITE3 REQUIRED IMPORTED_TARGET sqlite3)
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)
pkg_check_modules(PQ REQUIRED IMPORTED_TARGET libpq)

target_sources(messidge_obj PRIVATE
  src/identity.c          # layer 6: identity store: the API, checks and texts both backends share
  src/identity_sqlite.c   # layer 6: its SQLite backend (WAL): opening and reading it
  src/identity_sqlite_changes.c # layer 6: SQLite: invitations, adding keys, revocation
  src/identity_pg.c       # layer 6: its PostgreSQL backend (libpq): opening and reading it
  src/identity_pg_changes.c # layer 6: PostgreSQL: invitations, adding keys, revocation
  src/identity_pg_listen.c  # layer 6: PostgreSQL: LISTEN for revocations on a broker's loop
  src/account_server.c    # layer 6: invitation confirmation over HTTP
  src/account_client.c    # layer 6: create_account (libcurl)
  src/http_listen.c       # where a libmicrohttpd server listens (account and metrics)
  src/metrics_server.c    # the broker's /metrics and /healthz (libmicrohttpd)
)
foreach(t messidge_obj messidge_static)
  target_link_libraries(${t} PUBLIC PkgConfig::SQLITE3 PkgConfig::PQ PkgConfig::MHD PkgConfig::CURL)
endforeach()
target_link_libraries(messidge PRIVATE PkgConfig::SQLITE3 PkgConfig::PQ PkgConfig::MHD PkgConfig::CURL)

install(FILES include/messidge_identity.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
