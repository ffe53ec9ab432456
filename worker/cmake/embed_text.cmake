# Writes a C++ fragment defining `constexpr char <NAME>[]` with the contents of a text file, as
# a raw string literal. Run at build time:
#   cmake -DINPUT=file -DOUTPUT=file.inc -DNAME=kSymbol -P embed_text.cmake
file(READ "${INPUT}" text)
set(delimiter "hybpy")
string(FIND "${text}" ")${delimiter}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw-string terminator )${delimiter}\"")
endif()
set(content "// Generated from ${INPUT}; do not edit.\nconstexpr char ${NAME}[] = R\"${delimiter}(${text})${delimiter}\";\n")
file(WRITE "${OUTPUT}" "${content}")
