/*
 * One property, shared by the unit test that generates bodies
 * (tests/unit/common/ledger/test_accept_property.c) and the fuzz target
 * (tests/fuzz/fuzz_accept.c): a body the command API accepts never comes back
 * refused as invalid_request, neither from the decider (account commands, and
 * the transfer saga's steps) nor from the saga (a transfer). Only business
 * outcomes remain, each one of the codes the catalogue lists for its request.
 */
#ifndef TLY_TEST_ACCEPT_H
#define TLY_TEST_ACCEPT_H

#include "commands.h"

#include <stdbool.h>
#include <stddef.h>

/**
 * Validates `body` as command `kind`; when the API accepts it, writes the
 * request event as the API does, reads it back as the worker does, and
 * decides it against accounts in every state (unknown, open, frozen, closed,
 * another currency). `*accepted` says whether the API accepted it. Returns
 * false, with `why`, when the property does not hold.
 */
bool tly_test_accept_check(tly_command_kind_t kind, const json_t *body, bool *accepted, char *why, size_t cap);

#endif
