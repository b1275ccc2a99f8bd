// Who has the keyboard: a widget that wants it once it is ready (the terminal, when
// its shell starts) takes it only from nobody, never from a field the user is in.

/** The parts of a node `keyboardIsFree` looks at. */
interface Container {
  contains(other: unknown): boolean;
}

/** Whether `own` may take the keyboard: nothing has it (`active` is null or the page
 * body) or it is already inside `own`. */
export function keyboardIsFree(active: unknown, body: unknown, own: Container): boolean {
  return active == null || active === body || own.contains(active);
}
