// The one client of TaskService: gRPC-Web through Envoy on the page's own origin.

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { TaskService } from "./gen/mitosis/v1/task_service_pb";

export type TaskClient = Client<typeof TaskService>;

export function createTaskClient(
  baseUrl: string = window.location.origin,
  interceptors: Interceptor[] = [],
): TaskClient {
  return createClient(TaskService, createGrpcWebTransport({ baseUrl, interceptors }));
}
