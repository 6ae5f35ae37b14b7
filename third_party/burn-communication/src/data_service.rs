//! This module enables direct data transfer between servers without blocking the client or any server.
//!
//! It eliminates the need for intermediate data transfer through the client, avoiding the process of downloading data from one server and reuploading it to another.
//!
//! The module provides an optimized mechanism for servers to communicate directly, streamlining data movement between them without involving the client.

use crate::Message;
use crate::base::Protocol;
use crate::base::{Address, CommunicationChannel, ProtocolClient, ProtocolServer};
use burn_tensor::{TensorData, backend::Backend};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, marker::PhantomData, sync::Arc};
use tokio::sync::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorTransferId(u64);

impl From<u64> for TensorTransferId {
    fn from(value: u64) -> Self {
        Self(value)
    }
}

impl TensorTransferId {
    pub fn next(&mut self) {
        self.0 += 1;
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum DataServiceMessage {
    TensorRequest(TensorTransferId),
    Tensor(TensorData),
}

type ClientChannelRef<C> = Arc<Mutex<<C as ProtocolClient>::Channel>>;

pub struct TensorDataService<B: Backend, P: Protocol<Client: ProtocolClient>> {
    /// Maps tensor transfer IDs to their exposed state.
    pub exposed_tensors: Mutex<HashMap<TensorTransferId, TensorExposeState>>,
    /// Maps node addresses to their channels.
    pub channels: Mutex<HashMap<Address, ClientChannelRef<P::Client>>>,
    /// Notify when a new tensor is exposed.
    pub new_tensor_notify: Arc<Notify>,

    cancel_token: CancellationToken,

    _phantom_data: PhantomData<B>,
}

pub struct TensorExposeState {
    /// The bytes of the tensor data message. Message::Data(...) serialized with rmp_serde
    pub bytes: bytes::Bytes,
    /// How many times the tensor will be downloaded
    pub max_downloads: u32,
    /// How man times the tensor has been downloaded
    pub cur_download_count: u32,
}

/// Provides a routing function for a tensor data service for a communications server
pub trait TensorDataServer<B: Backend, P: Protocol> {
    /// Routes the tensor data service to the "/data" route
    fn route_tensor_data_service(self, state: Arc<TensorDataService<B, P>>) -> Self;
}

impl<B: Backend, S: ProtocolServer + Sized, P: Protocol<Server = S> + 'static>
    TensorDataServer<B, P> for S
{
    fn route_tensor_data_service(self, state: Arc<TensorDataService<B, P>>) -> Self {
        self.route("/data", async move |stream: S::Channel| {
            state.handle_data_channel(stream).await;
        })
    }
}

impl<B: Backend, P: Protocol> TensorDataService<B, P> {
    pub fn new(cancel_token: CancellationToken) -> Self {
        Self {
            exposed_tensors: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            new_tensor_notify: Arc::new(Notify::new()),
            cancel_token,
            _phantom_data: PhantomData::<B>,
        }
    }

    /// Exposes a tensor to the data server, allowing it to be downloaded by other nodes.
    pub async fn expose(
        &self,
        tensor: B::FloatTensorPrimitive,
        max_downloads: u32,
        transfer_id: TensorTransferId,
    ) {
        let data = B::float_into_data(tensor).await.unwrap();
        self.expose_data(data, max_downloads, transfer_id).await
    }

    /// Exposes a tensor data to the data server, allowing it to be downloaded by other nodes.
    pub async fn expose_data(
        &self,
        tensor_data: TensorData,
        max_downloads: u32,
        transfer_id: TensorTransferId,
    ) {
        let bytes: bytes::Bytes = rmp_serde::to_vec(&DataServiceMessage::Tensor(tensor_data))
            .unwrap()
            .into();
        let mut exposed_tensors = self.exposed_tensors.lock().await;
        exposed_tensors.insert(
            transfer_id,
            TensorExposeState {
                bytes,
                max_downloads,
                cur_download_count: 0,
            },
        );
        core::mem::drop(exposed_tensors);
        self.new_tensor_notify.notify_waiters();
    }

    pub async fn close(&self) {
        // Send a closing message to every open WebSocket stream

        let mut streams = self.channels.lock().await;
        for (address, stream) in streams.drain() {
            let mut stream = stream.lock().await;

            // castle: a peer already gone is no reason to panic (was `expect`).
            if let Err(err) = stream.close().await {
                log::warn!("Closing the connection to {address} failed: {err:?}");
            }
        }
    }

    /// Downloads a tensor that is exposed on another server. Requires a Tokio 1.x runtime
    ///
    /// Returns None if the peer cannot be reached, closes or loses the connection, or answers
    /// with something else than the tensor.
    // castle: each of these cases was a panic (`expect`, `panic!`) in the task running the
    // collective operation; a peer dying is expected in multi-node training, and `None` is
    // what the callers turn into `GlobalCollectiveError::PeerLost`.
    pub async fn download_tensor(
        &self,
        remote: Address,
        transfer_id: TensorTransferId,
    ) -> Option<TensorData> {
        log::debug!("Downloading tensor from {remote:?}");

        let stream = self.get_data_stream(remote.clone()).await?;
        let mut stream = stream.lock().await;

        // Send the download request with the download id
        let bytes: bytes::Bytes =
            rmp_serde::to_vec(&DataServiceMessage::TensorRequest(transfer_id))
                .unwrap()
                .into();
        if let Err(err) = stream.send(Message::new(bytes)).await {
            log::warn!("Cannot request a tensor from {remote}: {err:?}");
            return None;
        }

        let msg = match stream.recv().await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                log::warn!("{remote} closed the connection");
                return None;
            }
            Err(err) => {
                log::warn!("Lost the connection to {remote}: {err:?}");
                return None;
            }
        };
        match rmp_serde::from_slice(&msg.data) {
            Ok(DataServiceMessage::Tensor(data)) => Some(data),
            _ => {
                log::warn!("{remote} answered a tensor request with something else");
                None
            }
        }
    }

    /// Get the WebSocket stream for the given address, or create a new one if it doesn't exist;
    /// `None` when the address cannot be reached (castle: was a panic).
    async fn get_data_stream(
        &self,
        address: Address,
    ) -> Option<Arc<Mutex<<P::Client as ProtocolClient>::Channel>>> {
        let mut streams = self.channels.lock().await;
        match streams.get(&address) {
            Some(stream) => Some(stream.clone()),
            None => {
                // Open a new WebSocket connection to the address
                let Some(stream) = P::Client::connect(address.clone(), "data").await else {
                    log::warn!("Cannot connect to the data server at {address}");
                    return None;
                };

                let stream = Arc::new(Mutex::new(stream));
                streams.insert(address.clone(), stream.clone());

                Some(stream)
            }
        }
    }

    /// Get the requested exposed tensor data, and update download counter
    async fn get_exposed_tensor_bytes(
        &self,
        transfer_id: TensorTransferId,
    ) -> Option<bytes::Bytes> {
        loop {
            // castle: wait for the notification registered *before* looking, so that an
            // `expose` between the look and the wait is not missed (`notify_waiters` stores no
            // permit): without this, a download requested just before its tensor was exposed
            // could wait forever, hanging the multi-node all-reduce.
            let notified = self.new_tensor_notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut exposed_tensors = self.exposed_tensors.lock().await;
                // take the tensor out of the hashmap while we download
                if let Some(mut exposed_state) = exposed_tensors.remove(&transfer_id) {
                    exposed_state.cur_download_count += 1;
                    let bytes = if exposed_state.cur_download_count == exposed_state.max_downloads {
                        exposed_state.bytes
                    } else {
                        let bytes = exposed_state.bytes.clone();
                        exposed_tensors.insert(transfer_id, exposed_state);
                        bytes
                    };
                    return Some(bytes);
                }
            }
            // No matching tensor, wait for a new one to come in.
            notified.await;
        }
    }

    /// Handle incoming connections for downloading tensors.
    // castle: a connection that fails (the peer died: "connection reset"), a message that is not
    // a tensor request, or a failed send now ends this connection with a warning; each was a
    // panic of the server's task (`panic!`, `expect`, `unwrap`). The peer that downloads from
    // this node sees the connection end and reports `PeerLost`.
    pub(crate) async fn handle_data_channel(
        &self,
        mut channel: <P::Server as ProtocolServer>::Channel,
    ) {
        log::debug!("[Data Handler] New connection for download.");

        while !self.cancel_token.is_cancelled() {
            let bytes = match channel.recv().await {
                Ok(Some(msg)) => msg.data,
                Ok(None) => {
                    log::debug!("Closed connection");
                    return;
                }
                Err(err) => {
                    log::warn!("[Data Service] A peer's connection failed: {err:?}");
                    return;
                }
            };
            let transfer_id = match rmp_serde::from_slice(&bytes) {
                Ok(DataServiceMessage::TensorRequest(transfer_id)) => transfer_id,
                _ => {
                    log::warn!("[Data Service] A peer sent something else than a tensor request");
                    return;
                }
            };
            let Some(bytes) = self.get_exposed_tensor_bytes(transfer_id).await else {
                return;
            };
            if let Err(err) = channel.send(Message::new(bytes)).await {
                log::warn!("[Data Service] Cannot send a tensor to a peer: {err:?}");
                return;
            }
        }
        log::debug!("[Data Service] Closing connection for download.");
    }
}
