/*
 * reset-pvh.S - PVH guest that resets immediately (start-up benchmark).
 */
#include "defs.h"

        .intel_syntax noprefix
        .code32
        .text

FUNC(_start)
        jmp     i8042_reset32
END(_start)

        PVH_NOTE(_start)
