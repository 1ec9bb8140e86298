# abi_exports.cmake - the shared library's ABI is the API of include/, no more
# and no less. Run by ctest:
#   cmake -DNM=nm -DLIBRARY=libmessidge.so -DINCLUDE_DIR=include -P abi_exports.cmake
# Fails, listing them, when the library exports a symbol that include/*.h
# does not declare (an internal function leaking: -fvisibility=hidden lost),
# or when a function declared there is not exported (MDG_EXPORT missing, or
# no definition).
cmake_minimum_required(VERSION 3.18)

foreach(var NM LIBRARY INCLUDE_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "abi_exports: -D${var}=... is needed")
  endif()
endforeach()

# What the dynamic symbol table defines: "ADDRESS TYPE NAME" lines.
execute_process(COMMAND ${NM} -D --defined-only ${LIBRARY}
                OUTPUT_VARIABLE nm_out ERROR_VARIABLE nm_err RESULT_VARIABLE nm_rc)
if(NOT nm_rc EQUAL 0)
  message(FATAL_ERROR "abi_exports: ${NM} -D --defined-only ${LIBRARY} failed: ${nm_err}")
endif()
string(REGEX MATCHALL "[^\n]+" nm_lines "${nm_out}")
set(exported "")
foreach(line IN LISTS nm_lines)
  if(line MATCHES "^[0-9a-fA-F]* *[A-Za-z] ([^ ]+)$")
    list(APPEND exported "${CMAKE_MATCH_1}")
  endif()
endforeach()
# Symbols some linkers add to every shared object: not ours to declare.
list(REMOVE_ITEM exported _init _fini _edata _end __bss_start)
list(REMOVE_DUPLICATES exported)

# What include/ declares: every name followed by "(" outside comments.
# Public functions are all mdg_*; anything else the library exports fails.
file(GLOB headers ${INCLUDE_DIR}/*.h)
set(declared "")
foreach(header IN LISTS headers)
  file(READ ${header} text)
  # Drop /* ... */ comments (which name functions in passing) one by one.
  while(TRUE)
    string(FIND "${text}" "/*" open)
    if(open EQUAL -1)
      break()
    endif()
    string(SUBSTRING "${text}" ${open} -1 rest)
    string(FIND "${rest}" "*/" close)
    if(close EQUAL -1)
      message(FATAL_ERROR "abi_exports: unterminated comment in ${header}")
    endif()
    math(EXPR after "${open} + ${close} + 2")
    string(SUBSTRING "${text}" 0 ${open} head)
    string(SUBSTRING "${text}" ${after} -1 tail)
    set(text "${head} ${tail}")
  endwhile()
  string(REGEX REPLACE "//[^\n]*" "" text "${text}")
  string(REGEX MATCHALL "mdg_[a-z0-9_]+[ \t\n]*\\(" calls "${text}")
  foreach(call IN LISTS calls)
    string(REGEX REPLACE "[ \t\n]*\\($" "" name "${call}")
    list(APPEND declared "${name}")
  endforeach()
endforeach()
list(REMOVE_DUPLICATES declared)

set(undeclared "")
foreach(sym IN LISTS exported)
  if(NOT sym IN_LIST declared)
    list(APPEND undeclared "${sym}")
  endif()
endforeach()
set(unexported "")
foreach(fn IN LISTS declared)
  if(NOT fn IN_LIST exported)
    list(APPEND unexported "${fn}")
  endif()
endforeach()

list(LENGTH exported n_exported)
list(LENGTH declared n_declared)
get_filename_component(lib_name ${LIBRARY} NAME)
if(undeclared OR unexported)
  list(LENGTH undeclared n_undeclared)
  list(LENGTH unexported n_unexported)
  list(SORT undeclared)
  list(SORT unexported)
  list(JOIN undeclared "\n  " undeclared_text)
  list(JOIN unexported "\n  " unexported_text)
  set(msg "${lib_name} exports ${n_exported} symbols; include/ declares ${n_declared} functions.")
  if(undeclared)
    string(APPEND msg "\n${n_undeclared} exported but not declared in include/*.h "
                      "(internal: built without -fvisibility=hidden?):\n  ${undeclared_text}")
  endif()
  if(unexported)
    string(APPEND msg "\n${n_unexported} declared in include/*.h but not exported "
                      "(MDG_EXPORT missing, or not defined):\n  ${unexported_text}")
  endif()
  message(FATAL_ERROR "${msg}")
endif()
message(STATUS "${lib_name} exports ${n_exported} symbols, exactly the ${n_declared} "
               "functions declared in include/")
