/**
 * One statement: a CLIENT span (child of the active context) and one
 * `db.client.operation.duration` measurement, both with the same attributes and the same start
 * and end, so the span's duration and the histogram's value agree.
 *
 * @module
 */

import {
  type Attributes,
  context,
  type Histogram,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
} from "@opentelemetry/api";
import type { StatementStart } from "../hooks.ts";
import {
  ERROR_TYPE,
  failureOf,
  QUERY_TEXT,
  type ServerAttributeCache,
  STATUS_CODE,
  withFailure,
} from "./attributes.ts";
import { operationOf, type SpanNames } from "./span_name.ts";

/** What the statement hook needs. */
export interface StatementObserver {
  readonly tracer: Tracer;
  readonly duration: Histogram;
  readonly servers: ServerAttributeCache;
  readonly names: SpanNames;
  /** Put `db.query.text` on spans. */
  readonly queryText: boolean;
}

/** Starts observing one statement; the returned function ends it (`error` undefined: success). */
export function observeStatement(
  o: StatementObserver,
  start: StatementStart,
): (error: unknown) => void {
  const operation = operationOf(start.text);
  const attributes = o.servers.of(start.endpoint, start.database, operation);
  // performance.now() values are read by the SDK as offsets from its time origin: the span and
  // the histogram measure the same interval.
  const began = performance.now();
  const span = o.tracer.startSpan(
    o.names.of(operation, start.database),
    {
      kind: SpanKind.CLIENT,
      attributes: o.queryText ? { ...attributes, [QUERY_TEXT]: start.text } : attributes,
      startTime: began,
    },
    context.active(),
  );
  return (error) => {
    try {
      end(o, span, attributes, began, error);
    } catch {
      // A provider that throws loses this measurement; the statement's caller never notices.
    }
  };
}

function end(
  o: StatementObserver,
  span: Span,
  attributes: Attributes,
  began: number,
  error: unknown,
): void {
  const ended = performance.now();
  const seconds = (ended - began) / 1000;
  if (error === undefined) {
    o.duration.record(seconds, attributes);
  } else {
    const failure = failureOf(error);
    o.duration.record(seconds, withFailure(attributes, failure));
    const extra: Attributes = { [ERROR_TYPE]: failure.type };
    if (failure.statusCode !== undefined) extra[STATUS_CODE] = failure.statusCode;
    span.setAttributes(extra);
    span.setStatus({ code: SpanStatusCode.ERROR, message: failure.statusCode ?? failure.type });
  }
  span.end(ended);
}
